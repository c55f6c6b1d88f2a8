"""Prometheus metrics: the text exposition format, and the small HTTP responder that serves it.

``exposition`` writes the format, ``families`` turns the agent's status (the document
``hepto status --json`` shows) into metric families, ``process`` reads the process's
own figures from ``/proc``, ``http`` serves a scrape.  None of them knows a service:
``hepto.node`` composes them.  ``docs/metrics.rst`` lists every family.
"""
