"""The run's output folder: the names of the files it keeps, its checks before work starts, and the lock that
gives it to one run."""
