/* placeholder: upstream module, being written */
#include "upstream.h"
