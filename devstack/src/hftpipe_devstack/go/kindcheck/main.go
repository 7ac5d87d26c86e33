// Command kindcheck validates kind cluster configs with kind's own config API.
//
// kind itself only reads its config when it creates a cluster, which needs a
// container runtime; this decodes each file the way kind does (go.yaml.in/yaml/v3
// with unknown fields rejected) into sigs.k8s.io/kind/pkg/apis/config/v1alpha4.Cluster,
// so a typo'd field fails here instead of being found on a developer's laptop.
//
// Usage: kindcheck FILE... ("-" reads standard input); kindcheck -version.
// Prints "FILE: valid" or "FILE: <reason>" per file; exits 1 if any is invalid.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	yaml "go.yaml.in/yaml/v3"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
)

const (
	wantAPIVersion = "kind.x-k8s.io/v1alpha4"
	wantKind       = "Cluster"
	kindModule     = "sigs.k8s.io/kind"
)

// check decodes one kind config strictly; nil means kind would accept its shape.
func check(raw []byte) error {
	var meta struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
	}
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return fmt.Errorf("not a YAML mapping: %w", err)
	}
	if meta.APIVersion != wantAPIVersion {
		return fmt.Errorf("apiVersion is %q, want %q", meta.APIVersion, wantAPIVersion)
	}
	if meta.Kind != wantKind {
		return fmt.Errorf("kind is %q, want %q", meta.Kind, wantKind)
	}
	decoder := yaml.NewDecoder(bytes.NewReader(raw))
	decoder.KnownFields(true) // what kind's own loader does: unknown fields are errors
	var cluster v1alpha4.Cluster
	if err := decoder.Decode(&cluster); err != nil {
		return fmt.Errorf("%s %s: %w", wantAPIVersion, wantKind, err)
	}
	// kind reads only the first document: a second one would be silently ignored.
	for {
		var extra any
		err := decoder.Decode(&extra)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || extra != nil { // an empty document ("---" and comments) is harmless
			return errors.New("more than one YAML document: kind reads only the first")
		}
	}
	// Roles are plain strings in the API; kind's (internal) validation allows these.
	controlPlanes := 0
	for i, node := range cluster.Nodes {
		switch node.Role {
		case v1alpha4.ControlPlaneRole:
			controlPlanes++
		case v1alpha4.WorkerRole:
		default:
			return fmt.Errorf("nodes[%d].role is %q, want %q or %q",
				i, node.Role, v1alpha4.ControlPlaneRole, v1alpha4.WorkerRole)
		}
	}
	if len(cluster.Nodes) > 0 && controlPlanes == 0 {
		return errors.New("nodes has no control-plane node")
	}
	return nil
}

// kindVersion is the version of sigs.k8s.io/kind this binary was built with.
func kindVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path == kindModule {
			return dep.Version
		}
	}
	return "unknown"
}

func read(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(name)
}

func main() {
	args := os.Args[1:]
	if len(args) == 1 && args[0] == "-version" {
		fmt.Printf("%s %s\n", kindModule, kindVersion())
		return
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: kindcheck FILE... | kindcheck -version")
		os.Exit(2)
	}
	failed := false
	for _, name := range args {
		raw, err := read(name)
		if err == nil {
			err = check(raw)
		}
		if err != nil {
			failed = true
			fmt.Printf("%s: %v\n", name, err)
		} else {
			fmt.Printf("%s: valid\n", name)
		}
	}
	if failed {
		os.Exit(1)
	}
}
