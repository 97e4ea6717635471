"""Helpers shared by the test files: tiny datasets and checkpoints, launchers, demo uploads, real dataset layouts.

Import them as ``from helpers.training import ...``: ``setup.cfg`` puts ``tests/`` on pytest's ``pythonpath``.
"""
