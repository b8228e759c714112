/* placeholder: policy module, being written */
#include "policy.h"
