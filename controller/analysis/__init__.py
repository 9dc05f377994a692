"""Reading what is installed and proving it: verify (header space over the flows), trace, stats
and metrics. May import the rooms below the server and tep/; never the server or clients.
"""
