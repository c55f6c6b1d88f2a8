// Command containerd-shim-runc-v2 is containerd's runc shim, built from the
// same pinned module set as hepto-bundle but as its own binary: the shim
// initializes every plugin in containerd's process-wide plugin registry, so
// linked next to containerd's builtins (content store, snapshotters, CRI, ...)
// it tries to start those too and fails ("failed to load plugin
// io.containerd.content.v1.content"). It also re-executes os.Executable() to
// daemonize, and runs once per pod, where the multi-call binary's init cost
// (all of Kubernetes' package initializers, ~120 MB peak RSS) would be paid
// per pod. Body identical to upstream cmd/containerd-shim-runc-v2/main.go.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task/plugin"
	"github.com/containerd/containerd/v2/pkg/shim"
)

func main() {
	shim.RunShim(context.Background(), manager.NewShimManager("io.containerd.runc.v2"))
}
