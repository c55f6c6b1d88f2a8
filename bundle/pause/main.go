// Command pause is the pod sandbox's PID 1, as Kubernetes' own
// build/pause/linux/pause.c: it holds the pod's namespaces open, exits 0 on
// SIGINT or SIGTERM, and reaps the zombies a shared PID namespace leaves to
// it. hepto builds its own pause image from it (docs/images.rst) so that a
// node never pulls one.
//
// It is a main package of its own, not a program of hepto-bundle: it runs
// once per pod, and a hepto-bundle process pays every package initializer of
// Kubernetes, etcd and containerd at start. Only os/signal and syscall: fmt
// and friends would double its size for two messages.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	// Children that ended before the handler was in place sent their SIGCHLD to
	// nobody: collect them now rather than at the next child's end.
	reap()
	if os.Getpid() != 1 {
		// Not an error: pause also runs outside of a sandbox (in tests, for one).
		// Written once the signals are handled, so a reader knows they are.
		os.Stderr.WriteString("pause: warning: not the first process of a PID namespace\n")
	}
	for received := range signals {
		if received == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Stderr.WriteString("pause: shutting down, got " + received.String() + "\n")
		os.Exit(0)
	}
}

// reap collects every child that has ended. Signals coalesce (several
// children may end for one SIGCHLD), so it loops until none is left.
func reap() {
	var status syscall.WaitStatus
	for {
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
