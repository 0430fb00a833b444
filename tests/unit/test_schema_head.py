"""``schema.HEAD``, which a worker checks its database against without Alembic, is the newest
migration: adding a migration without moving HEAD fails here."""

from __future__ import annotations

import ast

from alembic.script import ScriptDirectory

from core.store import schema


def declared(name: str, tree: ast.Module) -> str | None:
    """The value a migration file assigns to ``name`` (``revision``, ``down_revision``)."""
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                assert node.value is not None
                return ast.literal_eval(node.value)  # type: ignore[no-any-return]
    return None


def test_head_is_the_newest_migration_alembic_finds():
    heads = ScriptDirectory.from_config(schema.alembic_config()).get_heads()
    assert heads == [schema.HEAD], "move core.store.schema.HEAD to the newest migration"


def test_head_is_the_revision_no_migration_file_builds_on():
    files = sorted((schema.MIGRATIONS / "versions").glob("[0-9]*.py"))
    trees = [ast.parse(f.read_text()) for f in files]
    revisions = {declared("revision", t) for t in trees}
    parents = {declared("down_revision", t) for t in trees}
    assert len(revisions) == len(files)
    assert revisions - parents == {schema.HEAD}
