"""Running actors on a cluster: worker groups and their calls (groups), prompts to engines by load
(dispatch), the actor layout and whether it fits (layout), placement groups on a running Ray
(placement), what each node offers (hardware), where process groups meet (rendezvous), and Ray Jobs
submission (jobs)."""
