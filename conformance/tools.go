//go:build tools

// The programs tools/build-e2e builds, required here so that go.mod and go.sum pin
// them: the suite (a test binary, go test -c), ginkgo (its runner, the version the
// suite requires) and the programs inside the test images (conformance/README.rst).
package conformance

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
	_ "k8s.io/kubernetes/test/images/nonewprivs"
	_ "k8s.io/sample-apiserver"
)
