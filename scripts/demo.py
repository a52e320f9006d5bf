#!/usr/bin/env python3
"""Placeholder until the trainer lands: make demo will train the quickstart model."""
raise SystemExit("make demo: the trainer is not built yet")
