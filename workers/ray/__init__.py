"""Where the Labelers run.

A Ray cluster (`cluster`), the actor pool (`pool`), the search for an object that kills its actor
(`isolation`), Ray Data's callable (`raydata`), and the watchdog that stops what a command-line run
started when it ends (`reaper`).
"""
