"""Before a run: memory per actor from config.json alone (memory), which actor goes where and whether it
fits (plan), and the preflight that checks every input before any actor starts (preflight)."""
