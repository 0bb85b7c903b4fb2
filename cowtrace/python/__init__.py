"""Python writer stacks: which Python code made each copy in a CPython member (issue 5).

offsets  where CPython keeps its thread states, frames and code objects, per version
elf      symbols of the interpreter binary or libpython (pyelftools)
detect   is a member CPython, which version, where is its _PyRuntime
resolve  code objects and native leaves to names, read through /proc/PID/mem
kernel   the BPF maps of the frame walk (bpf/python_stacks.h)
writers  the aggregator: copies per Python stack, categories, "why" lines
tracker  the session's single entry point: membership events in, views out
"""
