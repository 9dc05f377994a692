"""State that outlives a process: the SQLite store, the etcd store and a cluster's leader election.
May import the rooms below it; never the server or clients.
"""
