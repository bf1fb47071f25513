"""Lists C++ functions under csrc/ longer than a limit (issue 33: a function reads in one screen).

A function is a brace block whose header holds a parameter list and that is not a control
statement, class, namespace or lambda; its length runs from the header to the closing brace.
Usage: python tools/function_lengths.py [LIMIT]   (exit 1 when any is over LIMIT, default 80)
"""
import pathlib
import re
import sys

CONTROL = re.compile(r"^\s*(if|for|while|switch|else|do|try|catch|namespace|struct|class|enum|union|extern|return)\b")


def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])*'", "''", line)
    return line.split("//")[0]


def functions(path):
    lines = [strip(s) for s in path.read_text().split("\n")]
    out, i = [], 0
    while i < len(lines):
        l = lines[i]
        if l.rstrip().endswith("{") and not CONTROL.match(l) and "[" not in l.split("(")[0] and "=" not in l.split("(")[0]:
            k = i
            header = l
            while "(" not in header and k > 0 and lines[k - 1].strip() and not lines[k - 1].rstrip().endswith((";", "}", "{")):
                k -= 1
                header = lines[k] + header
            if "(" in header and not CONTROL.match(lines[k]) and not re.search(r"\]\s*\(|\]\s*\{", header):
                depth, j = 0, i
                while j < len(lines):
                    depth += lines[j].count("{") - lines[j].count("}")
                    if depth <= 0:
                        break
                    j += 1
                out.append((j - k + 1, k + 1, lines[k].strip()[:80]))
                i = j
        i += 1
    return out


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    root = pathlib.Path(__file__).resolve().parent.parent / "csrc"
    over = [(n, f"{p.relative_to(root.parent)}:{ln}", h) for p in sorted(root.rglob("*.[ch]*"))
            for n, ln, h in functions(p) if n > limit]
    for n, where, h in sorted(over, reverse=True):
        print(f"{n:4d}  {where}  {h}")
    sys.exit(1 if over else 0)
