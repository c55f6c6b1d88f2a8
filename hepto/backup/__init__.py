"""Backups of the master: taken, sealed, restored, and taken again every few hours.

``docs/backup.rst`` describes the file, the commands and their rationale.
"""
