"""A contract type import-linter lacks: "these modules import nothing of the project but each other".

The sandbox's child side (`models.sandbox.child`) runs inside the sandbox with only the standard library:
an import of any project module there would either fail inside the sandbox or, worse, carry project code
(and what it can reach) into it.  import-linter's `forbidden` contract cannot say "nothing of the project"
when the source lies inside a root package (its ancestors are not checked), so this contract walks every
module of `modules` and fails on any import of a project module outside them.  Registered in .importlinter
(`contract_types`).  A module named here that does not exist yet is reported as a warning, not a pass.
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class IsolatedContract(Contract):
    type_name = "isolated"

    modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        warnings: list[str] = []
        inside: set[str] = set()
        for name in self.modules:  # type: ignore[attr-defined]
            if name not in graph.modules:
                warnings.append(f"{name} does not exist (yet): nothing to check")
                continue
            inside |= {name} | graph.find_descendants(name)
        bad = sorted(
            (module, imported)
            for module in inside
            for imported in graph.find_modules_directly_imported_by(module)
            if imported not in inside
        )
        return ContractCheck(kept=not bad, warnings=warnings, metadata={"imports": bad})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, imported in check.metadata["imports"]:
            output.print_error(f"{module} imports {imported}, a project module")
            output.new_line()
