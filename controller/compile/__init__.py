"""Intent to flows: the allocator (numbers), the compiler (a pure function of intent and placement),
the pipeline (tables in order) and the desired state per host. May import only dataplane/,
topology/, controller/spaces/ and controller/layers/.
"""
