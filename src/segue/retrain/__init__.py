"""The model lifecycle above training, evaluation and serving: the weekly retrain loop
(`segue retrain`, loop.py; its Metaflow flow is segue.flows.retrain), the registry commands
(`segue registry`, `segue rollback`) and items added to registered models (`segue items add`)."""
