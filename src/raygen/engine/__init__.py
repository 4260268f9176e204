"""raygen's inference engine (issue 3, in progress). Pure torch and Python: no Ray import under engine/."""
