"""Rules will own rule definitions, evaluation over committed readings, the alert lifecycle and
notifiers. They read readings and never write them. (Not built yet: see the rule-engine issue.)"""
