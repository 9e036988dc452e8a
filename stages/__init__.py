"""One thin module per DVC stage; `stages.cli` exposes them as the `ship` command."""
