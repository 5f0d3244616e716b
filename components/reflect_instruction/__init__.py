"""Stage ``reflect_instruction``: the teacher rewrites each instruction (candidate ``Q``)."""
