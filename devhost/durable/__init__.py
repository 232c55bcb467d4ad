"""Durable Functions for devhost: the SDK's own replay (``handle``) driven by a local scheduler.

``history`` builds history events, ``store`` persists instances in SQLite, ``engine`` runs one
orchestrator episode, ``service`` schedules episodes, activities and timers, ``api`` serves the
HTTP API the SDK's DurableOrchestrationClient calls.
"""
