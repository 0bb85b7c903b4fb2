"""Attribution: which memory each copy was in, which allocation, and which code wrote it."""
