"""Shell completion scripts (bash, zsh) generated from the CLI's argparse parser.

The script is built by walking the parser, so a new command or option is
completable as soon as it exists: the first word that names a subcommand
selects that subcommand's options; before it, the top-level options and the
subcommand names are offered; any other word falls back to file names.
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(option string, help) for every optional argument of `parser`."""
    found: list[tuple[str, str]] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for option in action.option_strings:
            found.append((option, (action.help or "").replace("%%", "%")))
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """name -> (help, parser) for every subcommand of `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    if shell == "bash":
        return _bash(parser)
    if shell == "zsh":
        return _zsh(parser)
    raise ValueError(f"no completion for shell {shell!r} (choose from {', '.join(SHELLS)})")


def _bash(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    func = "_" + prog.replace("-", "_")
    commands = _subcommands(parser)
    top = " ".join([option for option, _ in _options(parser)] + list(commands))
    cases = "\n".join(
        f"        {name}) words=\"{' '.join(option for option, _ in _options(sub))}\" ;;"
        for name, (_, sub) in commands.items()
    )
    return f"""# bash completion for {prog}; load with: source <({prog} completion bash)
{func}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="" words="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {'|'.join(commands)}) command="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    case "$command" in
        "") words="{top}" ;;
{cases}
    esac
    if [[ -z "$command" || "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        COMPREPLY=()
    fi
}}
complete -o default -F {func} {prog}
"""


def _zsh_escape(text: str) -> str:
    """`text` inside a single-quoted _describe entry: quotes closed and
    reopened, colons (the name/description separator) escaped."""
    return text.replace("'", "'\\''").replace(":", "\\:")


def _zsh_specs(pairs: list[tuple[str, str]]) -> str:
    return " ".join(f"'{_zsh_escape(name)}:{_zsh_escape(help)}'" for name, help in pairs)


def _zsh(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    func = "_" + prog.replace("-", "_")
    commands = _subcommands(parser)
    cases = "\n".join(
        f"        ({name}) options=({_zsh_specs(_options(sub))}) ;;" for name, (_, sub) in commands.items()
    )
    return f"""#compdef {prog}
# zsh completion for {prog}; load with: source <({prog} completion zsh)  (after compinit)
{func}() {{
    local command="" word
    local -a commands options
    commands=({_zsh_specs([(name, help) for name, (help, _) in commands.items()])})
    for word in ${{words[2,CURRENT-1]}}; do
        case $word in
            ({'|'.join(commands)}) command=$word; break ;;
        esac
    done
    case $command in
        ("") options=({_zsh_specs(_options(parser))}) ;;
{cases}
    esac
    if [[ $PREFIX == -* ]]; then
        _describe -t options 'option' options
    elif [[ -z $command ]]; then
        _describe -t commands 'command' commands
    else
        _files
    fi
}}
compdef {func} {prog}
"""
