"""Shell completion scripts (bash, zsh) generated from the CLI's argparse parser.

The script is built by walking the parser, so a new command or option is
completable as soon as it exists: the first word that names a subcommand
(and is not an option's value) selects that subcommand's options; before it,
the top-level options and the subcommand names are offered; an option's
value and any other word fall back to file names.

The zsh script works both ways zsh loads completions: sourced
(`source <(caxton completion zsh)` after compinit), and saved as `_caxton`
in a directory of `$fpath`, where compinit autoloads it (`#compdef`) and its
first run must complete as well as define the function.
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


def _value_options(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings of `parser` that take a value (the next word)."""
    return [option for action in parser._actions if action.nargs != 0 for option in action.option_strings]


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
        f"        {name}) words=\"{' '.join(option for option, _ in _options(sub))}\" "
        f"values=\" {' '.join(_value_options(sub))} \" ;;"
        for name, (_, sub) in commands.items()
    )
    return f"""# bash completion for {prog}; load with: source <({prog} completion bash)
{func}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" command="" words="" values="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {'|'.join(_value_options(parser))}) ((i++)) ;;  # its value is not a command
            {'|'.join(commands)}) command="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    case "$command" in
        "") words="{top}" values=" {' '.join(_value_options(parser))} " ;;
{cases}
    esac
    if [[ "$values" == *" $prev "* ]]; then
        COMPREPLY=()  # an option's value: file names (-o default)
    elif [[ -z "$command" || "$cur" == -* ]]; then
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
        f"        ({name}) options=({_zsh_specs(_options(sub))})\n"
        f"            values=({' '.join(_value_options(sub))}) ;;"
        for name, (_, sub) in commands.items()
    )
    return f"""#compdef {prog}
# zsh completion for {prog}: load with `source <({prog} completion zsh)` after compinit,
# or save as {func} in a directory of $fpath
{func}() {{
    local command="" i
    local -a commands options values
    commands=({_zsh_specs([(name, help) for name, (help, _) in commands.items()])})
    for ((i = 2; i < CURRENT; i++)); do
        case $words[i] in
            ({'|'.join(_value_options(parser))}) (( i++ )) ;;  # its value is not a command
            ({'|'.join(commands)}) command=$words[i]; break ;;
        esac
    done
    case $command in
        ("") options=({_zsh_specs(_options(parser))})
            values=({' '.join(_value_options(parser))}) ;;
{cases}
    esac
    if (( ${{values[(Ie)$words[CURRENT-1]]}} )); then
        _files  # an option's value
    elif [[ $PREFIX == -* ]]; then
        _describe -t options 'option' options
    elif [[ -z $command ]]; then
        _describe -t commands 'command' commands
    else
        _files
    fi
}}
if [[ $funcstack[1] == {func} ]]; then
    {func} "$@"  # autoloaded from $fpath: this first run completes too
else
    compdef {func} {prog}
fi
"""
