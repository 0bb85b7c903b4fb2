"""`cowtrace report`: a summary or event log rendered as a text report or one HTML page.

load (files → ReportData), aggregate (event logs, streamed), flame (the writer-stack tree),
text (rich) and html (the self-contained page) each do one of those jobs.
"""
