"""`--help` of every command says what the command does and what each option is."""

import argparse

from inference_allocator.cli import build_parser


def test_every_command_and_option_has_help():
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) >= {"dev", "worker", "bridge", "status", "tail", "stats"}
    helped = {choice.dest: choice.help for choice in commands._choices_actions}
    for name, command in commands.choices.items():
        assert helped.get(name), f"{name} has no summary in the command list"
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"`{name} {'/'.join(action.option_strings) or action.dest}`"
