"""Putting requests on the priority topics: the Python API and the submit command."""
