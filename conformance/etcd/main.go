// etcd, for the image of the aggregator's conformance spec (registry.k8s.io/etcd): the
// server of the pinned module, as the bundle's etcd (bundle/programs.go), alone.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
