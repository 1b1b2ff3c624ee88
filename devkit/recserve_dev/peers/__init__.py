"""What `recserve bench serving` measures recserve against (run as separate processes)."""
