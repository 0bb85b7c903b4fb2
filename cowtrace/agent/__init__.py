"""`cowtrace agent`: one tracer for every matching process family on a node."""
