// Package multicall dispatches a multi-call binary (like busybox) to one of
// its programs, or execs a program built as a binary of its own next to it.
// hepto-bundle and hepto-tools share it; see docs/bundle.rst.
//
// It imports nothing but the standard library: whatever it imported would be
// initialised in every process of both binaries.
package multicall

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Binary describes one multi-call binary.
type Binary struct {
	// Name is the binary's own file name (hepto-bundle, hepto-tools).
	Name string
	// Programs maps each program name to its entry point. Entry points never
	// return normally except where the upstream main also returns (exit 0).
	Programs map[string]func()
	// Siblings maps programs that are not linked in to the binary, next to
	// this one (symlinks resolved), that runs them: `NAME PROGRAM args...`
	// execs it with argv[0] = <dir>/PROGRAM, as if called through the symlink.
	Siblings map[string]string
}

// Names returns the sorted program names, siblings included (`--list`).
func (b Binary) Names() []string {
	names := make([]string, 0, len(b.Programs)+len(b.Siblings))
	for name := range b.Programs {
		names = append(names, name)
	}
	for name := range b.Siblings {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Pick returns the linked-in program to run and the argv it should see:
//
//  1. the base name of argv[0] (symlinks named after each program), argv
//     unchanged;
//  2. else the first argument (`hepto-bundle kube-apiserver ...`), argv
//     shifted so that the program sees argv[0] = its own name.
func (b Binary) Pick(args []string) (string, []string) {
	if len(args) == 0 {
		return "", args
	}
	name := strings.TrimSuffix(filepath.Base(args[0]), ".exe")
	if _, ok := b.Programs[name]; ok {
		return name, args
	}
	if len(args) > 1 {
		if _, ok := b.Programs[args[1]]; ok {
			return args[1], args[1:]
		}
	}
	return "", args
}

// Main runs the program os.Args names, execs a sibling, lists the programs
// (`--list`) or prints the usage and exits 2.
func (b Binary) Main() {
	name, args := b.Pick(os.Args)
	if name == "" && len(os.Args) > 1 {
		if binary, ok := b.Siblings[os.Args[1]]; ok {
			b.execSibling(binary, os.Args[1], os.Args[2:])
		}
	}
	if name == "" {
		if len(os.Args) > 1 && os.Args[1] == "--list" {
			fmt.Println(strings.Join(b.Names(), "\n"))
			return
		}
		fmt.Fprintf(os.Stderr, "usage: %s PROGRAM [ARGS...]\n  or call it through a symlink named PROGRAM\nprograms: %s\n",
			filepath.Base(os.Args[0]), strings.Join(b.Names(), " "))
		os.Exit(2)
	}
	os.Args = args
	b.Programs[name]()
}

// execSibling replaces this process with binary, found next to the
// (symlink-resolved) executable of this one, as program.
func (b Binary) execSibling(binary, program string, args []string) {
	self, err := os.Executable()
	if err == nil {
		dir := filepath.Dir(self)
		argv := append([]string{filepath.Join(dir, program)}, args...)
		err = syscall.Exec(filepath.Join(dir, binary), argv, os.Environ())
	}
	fmt.Fprintf(os.Stderr, "%s: cannot run %s: %v\n", b.Name, program, err)
	os.Exit(127)
}
