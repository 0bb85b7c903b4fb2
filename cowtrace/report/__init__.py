"""`cowtrace report`: a summary or event log rendered as a text report, one HTML page, or a
profile for the tools people already use; two runs compared.

load (files → ReportData), aggregate (event logs, streamed), flame (the writer-stack tree),
text (rich) and html (the self-contained page) each do one of those jobs. stacks turns the
flame tree into weighted stacks for folded, speedscope and pprof (protowire: its encoding);
frames reads frame names back; diff and difftext compare two runs.
"""
