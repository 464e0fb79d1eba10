"""lmql-ray: replicas of lmql-core's engine on Ray Serve (``lmql serve-cluster``)."""
