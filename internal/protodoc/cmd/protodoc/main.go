// Command protodoc writes the Markdown API reference (docs/api.md) from a
// buf image:
//
//	go tool -modfile=tools/go.mod buf build -o /tmp/image.binpb
//	go run ./internal/protodoc/cmd/protodoc -image /tmp/image.binpb -out docs/api.md
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/plugincontrol/plugincontrol/internal/protodoc"
)

func main() {
	image := flag.String("image", "", "buf image (binary FileDescriptorSet with source info)")
	out := flag.String("out", "docs/api.md", "Markdown file to write")
	prefix := flag.String("package-prefix", "plugincontrol.", "document packages starting with this")
	title := flag.String("title", "plugincontrol API reference", "page title")
	flag.Parse()
	if err := run(*image, *out, *prefix, *title); err != nil {
		fmt.Fprintln(os.Stderr, "protodoc:", err)
		os.Exit(1)
	}
}

func run(image, out, prefix, title string) error {
	if image == "" {
		return fmt.Errorf("-image is required")
	}
	b, err := os.ReadFile(image)
	if err != nil {
		return err
	}
	files, err := protodoc.Load(b)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := protodoc.Render(&buf, files, prefix, title); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}
