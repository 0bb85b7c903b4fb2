"""Prometheus metrics: what cowtrace counts, served for the user's Prometheus to scrape."""
