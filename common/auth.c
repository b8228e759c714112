/* placeholder: auth module, being written */
#include "auth.h"
