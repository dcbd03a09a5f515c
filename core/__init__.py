"""Shared building blocks: settings, status vocabulary, errors, storage, criteria, templates."""
