"""The host layer: what cowtrace reads of this machine and of the traced processes outside BPF
(/proc maps, stat, smaps, taskstats, another process' memory), each read in one place."""
