"""Release: which model is the champion and which model is served (``release/promotion.py``).

It sits above ``training`` (evaluation and gates) and ``serving`` (rollouts) and below the callers:
the flows, the CLI and the dashboard's ``deploy/promote`` requests.
"""
