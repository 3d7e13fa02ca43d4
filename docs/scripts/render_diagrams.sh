#!/usr/bin/env bash
# Render docs/diagrams/*.mmd (Mermaid sources) to docs/images/*.svg, which the pages show: the
# site then needs no Mermaid script from a CDN. Rerun after editing a diagram and commit both.
#
#   docs/scripts/render_diagrams.sh            # needs node >= 18, npm and a Chromium/Chrome
#   CHROME=/path/to/chrome docs/scripts/render_diagrams.sh
#
# Uses Mermaid's own command-line renderer, @mermaid-js/mermaid-cli (installed from the npm
# registry into a temporary folder, not into the repository), driving the local browser
# (PUPPETEER_SKIP_DOWNLOAD: no browser download). Labels are plain SVG text (htmlLabels off),
# so the files also render outside a browser.
set -euo pipefail
cd "$(dirname "$0")/../.."
CHROME=${CHROME:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}
MMDC_VERSION=${MMDC_VERSION:-11.9.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && PUPPETEER_SKIP_DOWNLOAD=1 npm install --silent --no-audit --no-fund \
    "@mermaid-js/mermaid-cli@$MMDC_VERSION" "puppeteer@23" >/dev/null)
printf '{"executablePath": "%s", "args": ["--no-sandbox", "--disable-gpu"]}\n' "$CHROME" > "$work/puppeteer.json"
printf '{"theme": "neutral", "htmlLabels": false, "flowchart": {"htmlLabels": false, "useMaxWidth": false}}\n' > "$work/mermaid.json"
for src in docs/diagrams/*.mmd; do
    out="docs/images/diagram_$(basename "$src" .mmd).svg"
    "$work/node_modules/.bin/mmdc" --quiet -p "$work/puppeteer.json" -c "$work/mermaid.json" \
        -b white -i "$src" -o "$out"
    echo "$src -> $out ($(wc -c < "$out") bytes)"
done
