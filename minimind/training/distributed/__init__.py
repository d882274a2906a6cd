"""Who this process is in the job and how it meets the others: the launcher's world, the start-up rendezvous, the
process group, the collectives, rank-aware printing and the stall watchdog."""
