from rlhf_ray.cli import main

raise SystemExit(main())
