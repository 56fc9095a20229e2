package readme

import "testing"

func TestSection(t *testing.T) {
	d := Parse("# T\n\n## A\n\ntext\n\n```go\npackage a\n```\n\n### A.1\n\n```sh\necho 1\n```\n\n## B\n\n```go\npackage b\n```\n")
	bs, err := d.Section("## A")
	if err != nil || len(bs) != 2 || bs[0].Lang != "go" || bs[0].Text != "package a\n" || bs[1].Lang != "sh" || bs[1].Line != 13 {
		t.Fatalf("## A: %+v %v", bs, err)
	}
	if b, err := d.One("## B", "go"); err != nil || b.Text != "package b\n" {
		t.Fatalf("## B: %+v %v", b, err)
	}
	if _, err := d.One("## A", "py"); err == nil {
		t.Fatal("a missing block passed")
	}
	if _, err := d.Section("## C"); err == nil {
		t.Fatal("a missing section passed")
	}
}

func TestAllMarkersAndIndentedFences(t *testing.T) {
	d := Parse("# T\n\n<!-- runnable -->\n```sh\necho a\n```\n\n- item:\n\n  ```yaml\n  k: v\n    nested: x\n  ```\n<!--not run: why-->\n```go\npackage x\n```\n")
	bs := d.All()
	if len(bs) != 3 {
		t.Fatalf("%d blocks: %+v", len(bs), bs)
	}
	want := []Block{
		{Lang: "sh", Text: "echo a\n", Line: 4, Marker: "runnable"},
		{Lang: "yaml", Text: "k: v\n  nested: x\n", Line: 10},
		{Lang: "go", Text: "package x\n", Line: 15, Marker: "not run: why"},
	}
	for i := range want {
		if bs[i] != want[i] {
			t.Errorf("block %d: %+v, want %+v", i, bs[i], want[i])
		}
	}
}
