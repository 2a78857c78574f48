"""The HTTP front ends of the Router, one APIRouter each: native, OpenAI, A1111, tasks, playground."""
