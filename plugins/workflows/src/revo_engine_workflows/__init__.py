"""The Coordinator: durable workflows that combine the mesh's engines (docs/workflows.md).

Work in progress: the contract (``revo.workflows.v1.WorkflowService``), CEL expressions and
the validation of definitions exist; the engine that runs them does not yet, so the plugin
registers no ``revo.engines`` entry point until it does.
"""
