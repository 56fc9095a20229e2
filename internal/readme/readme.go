// Package readme reads the fenced code blocks of a Markdown document by
// section, so that tests can run what README.md tells a reader to run.
package readme

import (
	"fmt"
	"os"
	"strings"
)

// Block is a fenced code block.
type Block struct {
	// Lang is the info string after the opening fence ("go", "sh").
	Lang string
	// Text is the content, with a final newline.
	Text string
	// Line is the 1-based line of the opening fence.
	Line int
}

// Doc is a parsed Markdown document.
type Doc struct {
	lines []string
}

// Read parses the Markdown file at path.
func Read(path string) (*Doc, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(string(b)), nil
}

// Parse parses Markdown text.
func Parse(text string) *Doc { return &Doc{lines: strings.Split(text, "\n")} }

// Section returns the fenced blocks of the section whose heading line is
// heading (such as "## Writing a plugin"), up to the next heading of the
// same or a higher level. It fails when there is no such heading.
func (d *Doc) Section(heading string) ([]Block, error) {
	level := strings.IndexByte(heading, ' ')
	start := -1
	for i, l := range d.lines {
		if strings.TrimRight(l, " ") == heading {
			start = i
			break
		}
	}
	if start < 0 || level < 1 {
		return nil, fmt.Errorf("no heading %q", heading)
	}
	var out []Block
	for i := start + 1; i < len(d.lines); i++ {
		l := d.lines[i]
		if h := strings.IndexByte(l, ' '); h >= 1 && h <= level && strings.Count(l[:h], "#") == h {
			break
		}
		if !strings.HasPrefix(l, "```") {
			continue
		}
		b := Block{Lang: strings.TrimSpace(strings.TrimPrefix(l, "```")), Line: i + 1}
		var text strings.Builder
		for i++; i < len(d.lines) && !strings.HasPrefix(d.lines[i], "```"); i++ {
			text.WriteString(d.lines[i])
			text.WriteByte('\n')
		}
		b.Text = text.String()
		out = append(out, b)
	}
	return out, nil
}

// One returns the only block of language lang in the section, failing
// when there is none or more than one.
func (d *Doc) One(heading, lang string) (Block, error) {
	bs, err := d.Section(heading)
	if err != nil {
		return Block{}, err
	}
	var found []Block
	for _, b := range bs {
		if b.Lang == lang {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		return Block{}, fmt.Errorf("section %q has %d %s blocks, want 1", heading, len(found), lang)
	}
	return found[0], nil
}
