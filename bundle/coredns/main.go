// Command coredns is CoreDNS, the cluster's DNS server, with only the plugins
// that hepto's Corefile uses (hepto/kube/coredns.py, docs/dns.rst).
//
// It is a module and a binary of its own, not a program of hepto-bundle:
// CoreDNS's packages change the process they are linked into from their
// initializers. The kubernetes plugin registers client-go's metrics adapters
// (metrics.Register, which keeps the first caller's), so the Kubernetes
// programs would report their API requests under CoreDNS's metric names;
// coremain adds -conf, -p, -version and others to Go's global flag set, which
// kube-proxy merges into its own flags. Its own module also keeps CoreDNS on
// the dependency versions it is released and tested with.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// directives are the linked plugins in CoreDNS's own order (its plugin.cfg):
// the order in which each query goes through them, whatever the Corefile's.
var directives = []string{
	"bind",
	"ready",
	"errors",
	"cache",
	"template",
	"kubernetes",
	"loop",
	"forward",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
