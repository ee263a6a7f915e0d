"""``crispctl completion bash|zsh|fish``: shell completion scripts made from crispctl's parser.

Generated from the argparse tree rather than written by hand, so a new verb or flag completes
without anyone remembering to edit a script. The scripts complete verbs (and the subverbs of
``images``), each verb's flags, and the values of flags that take a fixed set (``-o``).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")


@dataclass
class Node:
    """One command level: its subverbs, its flags and the fixed values some flags take."""

    path: tuple[str, ...]
    verbs: dict[str, tuple[str, Node]] = field(default_factory=dict)  # name -> (help, node)
    flags: list[argparse.Action] = field(default_factory=list)
    words: list[str] = field(default_factory=list)  # fixed values of positionals (the shell)


def command_tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Node:
    """The verbs and flags of ``parser`` and of its subparsers, recursively."""
    node = Node(path)
    helps: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                helps[choice.dest] = choice.help or ""
            for name, sub in action.choices.items():
                node.verbs[name] = (helps.get(name, ""), command_tree(sub, (*path, name)))
        elif action.option_strings:
            node.flags.append(action)
        elif action.choices:
            node.words.extend(str(choice) for choice in action.choices)
    return node


def _nodes(node: Node) -> list[Node]:
    return [node, *(n for _, child in node.verbs.values() for n in _nodes(child))]


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (one of SHELLS)."""
    tree = command_tree(parser)
    prog = parser.prog
    if shell == "fish":
        return _fish(prog, tree)
    body = _bash(prog, tree)
    if shell == "zsh":
        # zsh runs bash completion functions through bashcompinit; the bash script sticks to
        # what both shells share (no associative arrays, $2/$3 for the current/previous word).
        return (f"#compdef {prog}\n"
                "autoload -U +X bashcompinit && bashcompinit\n" + body)
    return body


def _bash(prog: str, tree: Node) -> str:
    name = "_" + prog.replace("-", "_")
    verb_cases, flag_cases, value_cases = [], [], []
    for node in _nodes(tree):
        key = shlex.quote(" ".join((prog, *node.path)))
        if node.verbs or node.words:
            words = " ".join([*node.verbs, *node.words])
            verb_cases.append(f"        {key}) printf '%s\\n' {shlex.quote(words)} ;;")
        flags = [option for action in node.flags for option in action.option_strings]
        flag_cases.append(f"        {key}) printf '%s\\n' {shlex.quote(' '.join(flags))} ;;")
        for action in node.flags:
            if not _takes_value(action):
                continue
            words = " ".join(str(choice) for choice in action.choices or ())
            pattern = "|".join(shlex.quote(f"{' '.join((prog, *node.path))}:{option}")
                               for option in action.option_strings)
            value_cases.append(f"        {pattern})"
                               f" printf '%s\\n' {shlex.quote(words or '-')} ;;")
    global_values = " ".join(
        option for action in tree.flags if _takes_value(action)
        for option in action.option_strings)
    return f"""# bash completion for {prog}; load with: source <({prog} completion bash)
{name}_verbs() {{
    case "$1" in
{chr(10).join(verb_cases)}
    esac
}}
{name}_flags() {{
    case "$1" in
{chr(10).join(flag_cases)}
    esac
}}
# the values a flag takes: a fixed set, "-" for any (files), nothing for a switch
{name}_values() {{
    case "$1" in
{chr(10).join(value_cases)}
    esac
}}
{name}() {{
    local cur="$2" prev="$3" command="{prog}" word values skip=""
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        if [[ -n "$skip" ]]; then skip=""; continue; fi
        case "$word" in
            -*=*) ;;
            -*) if [[ -n "$({name}_values "$command:$word")" ||
                      " {global_values} " == *" $word "* ]]; then
                    skip=1
                fi ;;
            *) if [[ " $({name}_verbs "$command") " == *" $word "* ]]; then
                   command="$command $word"
               fi ;;
        esac
    done
    values="$({name}_values "$command:$prev")"
    if [[ -z "$values" && " {global_values} " == *" $prev "* ]]; then values="-"; fi
    if [[ -n "$values" && "$prev" == -* ]]; then
        if [[ "$values" == "-" ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$values" -- "$cur"))
        fi
    elif [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$({name}_flags "$command")" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$({name}_verbs "$command")" -- "$cur"))
        if [[ ${{#COMPREPLY[@]}} -eq 0 ]]; then COMPREPLY=($(compgen -f -- "$cur")); fi
    fi
    return 0
}}
complete -F {name} {prog}
"""


def _fish(prog: str, tree: Node) -> str:
    lines = [f"# fish completion for {prog}; load with: {prog} completion fish | source",
             f"complete -c {prog} -n __fish_use_subcommand -f"]

    def flag_line(action: argparse.Action, condition: str) -> str:
        parts = [f"complete -c {prog}"]
        if condition:
            parts.append(f"-n {shlex.quote(condition)}")
        for option in action.option_strings:
            if option.startswith("--"):
                parts.append(f"-l {option[2:]}")
            elif len(option) == 2:
                parts.append(f"-s {option[1]}")
            else:
                parts.append(f"-o {option[1:]}")
        if _takes_value(action):
            parts.append("-r")
            if action.choices:
                parts.append("-f -a " + shlex.quote(" ".join(str(c) for c in action.choices)))
        if action.help and action.help != argparse.SUPPRESS:
            parts.append("-d " + shlex.quote(action.help.split("(")[0].strip()))
        return " ".join(parts)

    for action in tree.flags:
        lines.append(flag_line(action, ""))
    for node in _nodes(tree):
        if node.path:
            seen = f"__fish_seen_subcommand_from {node.path[-1]}"
        if node.verbs:
            verbs = " ".join(node.verbs)
            condition = ("__fish_use_subcommand" if not node.path else
                         f"{seen}; and not __fish_seen_subcommand_from {verbs}")
            for verb, (help_text, _) in node.verbs.items():
                lines.append(f"complete -c {prog} -n {shlex.quote(condition)} -a {verb}"
                             + (f" -d {shlex.quote(help_text)}" if help_text else ""))
        if node.path and node.words:
            lines.append(f"complete -c {prog} -n {shlex.quote(seen)} -f -a "
                         + shlex.quote(" ".join(node.words)))
        if node.path:
            for action in node.flags:
                if action.dest != "help":
                    lines.append(flag_line(action, seen))
    return "\n".join(lines) + "\n"


def add_completion_command(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                           root: argparse.ArgumentParser) -> None:
    """Add ``completion SHELL``; it prints the script for crispctl's whole parser ``root``."""
    completion = commands.add_parser(
        "completion", help="print a shell completion script (bash, zsh or fish)",
        description="Print a completion script. bash: `source <(crispctl completion bash)`; "
        "zsh: `source <(crispctl completion zsh)`; fish: `crispctl completion fish | source`.")
    completion.add_argument("shell", choices=SHELLS)

    def run(args: argparse.Namespace) -> int:
        print(script(root, args.shell), end="")
        return 0

    completion.set_defaults(run_local=run)
