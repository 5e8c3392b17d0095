"""Clustering: discovery (who exists), coordination through etcd (who leads, who is in sync) and log
replication (followers pull from the leader). Imports storage and log, never api."""
