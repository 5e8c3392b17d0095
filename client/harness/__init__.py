"""Test and benchmark tooling around the client library: local node, etcd and cluster launchers
(localprocess, localnode, localetcd, localcluster), a recorded append workload (workload) and the
consistency checker that judges its history on every node (checker). Nothing here is needed to use
the client."""
